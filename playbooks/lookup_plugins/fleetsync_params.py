"""Ansible lookup: the file of this dispatch run's parameters, once it exists.

A run started at the launch of `fleetsync run` (controller/hostrun.py,
FleetRun.ahead) begins before the controller has opened its ledger: the play's
first task waits here, on the controller's side, until the file is written
(renamed into place whole), and reads it with include_vars. If the controller
dies meanwhile, nothing would ever write it: the run ends.
"""
import os
import time

from ansible.errors import AnsibleError
from ansible.plugins.lookup import LookupBase

DOCUMENTATION = """
name: fleetsync_params
short_description: wait for the file of a fleetsync dispatch run's parameters
description: Returns the path given once the file exists; ends the run if its controller died.
options:
  _terms:
    description: the path of the parameters file
    required: true
"""

POLL = 0.01     # seconds between looks: the wait is on the path of the first rsync


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        from fleetsync.controller import processes

        path = str(terms[0])
        controller = (variables or {}).get("fleetsync_controller")
        while not os.path.exists(path):
            if not processes.controller_alive(controller):
                # ansible-playbook, our parent, passes SIGTERM on to its workers.
                processes.end_parent_run()
                raise AnsibleError("fleetsync_params: the controller is gone")
            time.sleep(POLL)
        return [path]
