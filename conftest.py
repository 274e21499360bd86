"""pytest configuration shared by the unit tests and the notebook run.

The notebooks are executed by nbval in their ``quick`` profile: ``MVL_PROFILE`` is set here, before nbval
starts any kernel, unless the caller chose a profile (``MVL_PROFILE=book pytest notebooks`` re-checks the
book profile).
"""

import os

os.environ.setdefault("MVL_PROFILE", "quick")

# Leftovers of an interrupted `python -m mvl.book run` are not chapters (see mvl.book.run_notebook).
collect_ignore_glob = ["notebooks/*.failed.ipynb", "notebooks/.*.ipynb"]
