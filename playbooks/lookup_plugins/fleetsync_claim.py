"""Ansible lookup: the command of the next batches for this worker host.

Ansible templates a loop item just before running it, so this lookup runs
once per item, on the controller, and hands the host whatever batches wait
now (several, for its slots side by side). The logic lives in
fleetsync.controller.slot; this is the shim.
"""

from ansible.errors import AnsibleError
from ansible.plugins.lookup import LookupBase

DOCUMENTATION = """
name: fleetsync_claim
short_description: claim the next fleetsync batches and return their shell command
description: Claims the oldest waiting batches in the fleetsync ledger for this worker host.
options:
  _terms:
    description: the preflight output that names the worker
    required: true
"""


def _number(value):
    """An extra variable that is a number or unset (None, or '' as Jinja renders none)."""
    return None if value in (None, "", "None") else float(value)


def _whole(value):
    """An extra variable that is a whole number or unset."""
    return None if value in (None, "", "None") else int(value)


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        from fleetsync.controller import processes, protocol, rsync, slot
        from fleetsync.ledger.states import DeleteMode, OutcomeKind

        v = variables or {}
        try:
            worker_id = protocol.worker(str(terms[0]))
            if not processes.controller_alive(v.get("fleetsync_controller")):
                # Nobody records what this run does: end it (ansible-playbook, our
                # parent, passes SIGTERM on to its workers) and claim nothing.
                processes.end_parent_run()
                return [slot.STOP]
            # This host's lanes and stop file: the run's parameters (dispatch.yml).
            host = v["fleetsync_hosts"][v["inventory_hostname"]]
            return [slot.next_command(v["fleetsync_ledger"], worker_id,
                                      host["stop_file"], v["fleetsync_run_token"],
                                      list(v["fleetsync_rsync_options"]),
                                      OutcomeKind(v.get("fleetsync_mode", "copy")),
                                      DeleteMode(v.get("fleetsync_delete", "off")),
                                      lanes=int(host["lanes"]),
                                      controller=v.get("fleetsync_controller"),
                                      beat=float(v.get("fleetsync_beat", rsync.BEAT_SECONDS)),
                                      stop_at=_number(v.get("fleetsync_window_stop_at")),
                                      verify_rate=_whole(v.get("fleetsync_verify_rate")))]
        except Exception as e:  # an exception here would fail the host; say why instead
            raise AnsibleError(f"fleetsync_claim: {type(e).__name__}: {e}") from e
