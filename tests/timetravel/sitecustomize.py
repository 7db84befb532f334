"""Loaded by every Python child process of the suite when ``TOKENCTL_TEST_NOW`` is set (conftest puts this
folder on PYTHONPATH): the child runs under the same moved wall clock as the tests."""

import os

if os.environ.get("TOKENCTL_TEST_NOW"):
    import time_machine

    time_machine.travel(os.environ["TOKENCTL_TEST_NOW"], tick=True).start()
