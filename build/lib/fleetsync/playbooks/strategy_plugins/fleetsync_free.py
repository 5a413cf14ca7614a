"""Ansible's `free` strategy, with fleetsync's claim code imported up front.

The strategy runs in the ansible-playbook process, before it forks a worker
per host and task. Importing fleetsync.controller.slot here (SQLAlchemy and the ledger:
~0.3 s of CPU) means every slot's worker inherits it instead of importing it
again when its first loop item is templated.
"""
from ansible.plugins.strategy.free import StrategyModule as FreeStrategy

try:
    import fleetsync.controller.slot  # noqa: F401  (for the forked workers)
except ImportError:   # the lookup will say what is missing
    pass


class StrategyModule(FreeStrategy):
    pass
