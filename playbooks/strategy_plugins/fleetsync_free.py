"""Ansible's `free` strategy, with fleetsync's claim code imported up front, and the
run tied to the life of the `fleetsync run` that started it.

The strategy runs in the ansible-playbook process, before it forks a worker
per host and task. Importing fleetsync.controller.slot here (SQLAlchemy and the ledger:
~0.3 s of CPU) means every host's worker inherits it instead of importing it
again when its first loop item is templated.

When the controller dies (kill -9), nothing would record what the run does:
ansible-playbook gets SIGTERM then (PR_SET_PDEATHSIG; Ansible passes it on to
its workers' process groups), and ends at once if the controller is gone
already. Without this, a worker that lost its reader could leave the strategy
waiting for its result for ever.
"""
import ctypes
import gc
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

try:
    from fleetsync.controller import slot
except ImportError:   # the lookup will say what is missing
    slot = None


def _tie_to_controller(controller: str | None) -> None:
    if not controller or slot is None:
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):   # not Linux: the lookups still stop claiming
        pass
    if not slot.controller_alive(controller):   # it died before the prctl
        os.kill(os.getpid(), signal.SIGTERM)


class StrategyModule(FreeStrategy):
    def run(self, iterator, play_context):
        _tie_to_controller(self._variable_manager.extra_vars.get("fleetsync_controller"))
        # What exists now is shared with every worker forked from here: out of the
        # collector's sight, its pages are not copied into each worker when a
        # collection walks them (less memory per host).
        gc.freeze()
        # The main loop peeks at every host's next task, then sleeps this long
        # (default 1 ms: ~1,000 rounds a second, most of ansible-playbook's CPU in a
        # long loop, whatever the work; only settable in ansible.cfg). A loop item
        # runs inside its worker, unaffected; a task's start or result hand-over
        # waits up to this long.
        C.DEFAULT_INTERNAL_POLL_INTERVAL = POLL_INTERVAL
        return super().run(iterator, play_context)
