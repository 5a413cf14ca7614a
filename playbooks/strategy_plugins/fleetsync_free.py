"""Ansible's `free` strategy, with fleetsync's claim code imported up front, and the
run tied to the life of the `fleetsync run` that started it.

The strategy runs in the ansible-playbook process, which forks a worker per host
and task. Importing fleetsync.controller.slot here (SQLAlchemy and the ledger:
~0.3 s of CPU) means every host's worker inherits it instead of importing it
again when its first loop item is templated. It is imported once the play's
first task (the wait for the run's parameters, which needs none of it) is handed
to a worker: a run started at the launch of `fleetsync run` imports it while it
waits, not on the way to the first rsync.

Until the batches' task starts, the main loop looks for work every
START_POLL_INTERVAL: the tasks before it are short, and each hand-over waits up to
that long. From then on, POLL_INTERVAL (see run()).

When the controller dies (kill -9), nothing would record what the run does:
ansible-playbook gets SIGTERM then (PR_SET_PDEATHSIG; Ansible passes it on to
its workers' process groups), and ends at once if the controller is gone
already. Without this, a worker that lost its reader could leave the strategy
waiting for its result for ever.
"""
import ctypes
import gc
import json
import os
import signal

from ansible import constants as C
from ansible.plugins.strategy.free import StrategyModule as FreeStrategy

# The main loop's pass costs ~70 us per host (it peeks at every host's next task):
# at 0.05 s that was ~1.4 ms of CPU a second per host (bench/fleet_cost.py), 1.4
# cores at 1,000 hosts. Item results do not wait for it (the strategy's results
# thread passes them to the callbacks at once); only a host's task start and its
# loop's end do, by up to this long.
POLL_INTERVAL = 0.25
START_POLL_INTERVAL = 0.005
BATCHES_TASK = "Batches"      # controller/hostrun.py's BATCHES_TASK
HOSTS_OUT = "fleetsync_hosts_out"   # controller/hostrun.py's HOSTS_OUT_VAR

try:
    from fleetsync.controller import processes
except ImportError:   # the lookups will say what is missing
    processes = None


def _tie_to_controller(controller: str | None) -> None:
    if not controller or processes is None:
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):   # not Linux: the lookups still stop claiming
        pass
    if not processes.controller_alive(controller):   # it died before the prctl
        os.kill(os.getpid(), signal.SIGTERM)


def _write_hosts(path, variable_manager, hosts) -> None:
    """The play's hosts with their variables, as `ansible-inventory --list` lists them
    (the same calls, the same encoder), renamed into place whole: a run started at
    the launch of `fleetsync run` hands the controller the inventory it read, so the
    inventory is read once (controller/hostrun.py, HostsRead)."""
    try:
        from ansible._internal._json._profiles import _inventory_legacy
        encoder = _inventory_legacy.Encoder
    except ImportError:   # another ansible-core: its public encoder
        from ansible.parsing.ajson import AnsibleJSONEncoder as encoder
    hostvars = {}
    for host in hosts:
        found = variable_manager.get_vars(host=host, include_hostvars=False, stage="all")
        # The run's own extra variables and ansible-playbook's options (check mode...)
        # are no host's: ansible-inventory has neither.
        for name in (*C.INTERNAL_STATIC_VARS, *variable_manager.extra_vars,
                     *getattr(variable_manager, "_options_vars", {})):
            found.pop(name, None)
        hostvars[host.name] = found
    with open(path + ".new", "w") as f:
        json.dump({"_meta": {"hostvars": hostvars}, "all": {"hosts": sorted(hostvars)}}, f,
                  cls=encoder)
    os.rename(path + ".new", path)


def _import_claim_code() -> None:
    try:
        from fleetsync.controller import slot  # noqa: F401  (inherited by the workers)
    except ImportError:   # the lookup will say what is missing
        return
    # What exists now is shared with every worker forked from here: out of the
    # collector's sight, its pages are not copied into each worker when a
    # collection walks them (less memory per host).
    gc.freeze()


class StrategyModule(FreeStrategy):
    _claim_code = False

    def run(self, iterator, play_context):
        _tie_to_controller(self._variable_manager.extra_vars.get("fleetsync_controller"))
        out = self._variable_manager.extra_vars.get(HOSTS_OUT)
        if out:
            _write_hosts(out, self._variable_manager,
                         self._inventory.get_hosts(iterator._play.hosts))
        gc.freeze()
        # The main loop peeks at every host's next task, then sleeps this long
        # (default 1 ms: ~1,000 rounds a second, most of ansible-playbook's CPU in a
        # long loop, whatever the work; only settable in ansible.cfg). A loop item
        # runs inside its worker, unaffected; a task's start or result hand-over
        # waits up to this long.
        C.DEFAULT_INTERNAL_POLL_INTERVAL = START_POLL_INTERVAL
        return super().run(iterator, play_context)

    def _queue_task(self, host, task, task_vars, play_context):
        if task.get_name() == BATCHES_TASK:
            C.DEFAULT_INTERNAL_POLL_INTERVAL = POLL_INTERVAL
        super()._queue_task(host, task, task_vars, play_context)
        if not self._claim_code:
            self._claim_code = True
            _import_claim_code()
