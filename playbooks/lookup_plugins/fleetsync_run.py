"""Ansible lookup: the `fleetsync run` command line of playbooks/migrate.yml.

The logic lives in fleetsync.controller.playbook; this is the shim. It returns a
one-item list: {"argv", "src", "dest"}; an old variable name still used is an
Ansible warning, a variable it cannot use one line of error.
"""
import dataclasses
import os

from ansible.errors import AnsibleError
from ansible.plugins.lookup import LookupBase
from ansible.utils.display import Display

DOCUMENTATION = """
name: fleetsync_run
short_description: the fleetsync run command line of migrate.yml
description: Turns the playbook's variables into the argv of `fleetsync run`.
options:
  _terms:
    description: the variables (a dict, None for unset), the python, the inventory
    required: true
"""


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        from fleetsync.controller import playbook

        given, python, inventory = terms
        try:
            run = playbook.command(dict(given), str(python), str(inventory), os.getcwd())
        except playbook.PlaybookError as e:
            raise AnsibleError(f"fleetsync: {e}") from None
        for warning in run.warnings:
            Display().warning(warning)
        return [dataclasses.asdict(run)]
