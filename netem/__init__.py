"""Network degradation runs: the real agent called through an impaired three-namespace lab.

profiles.py  link profiles: the named ones in profiles.toml and inline key=value specs
lab.py       `netem/lab up|down|status`: agent <-> router <-> caller network namespaces
commands.py  the shell commands that impair one direction of a link, as argv lists
apply.py     `netem/apply PROFILE` and `netem/clear`: impair (or restore) both directions
nfq.py       NFQUEUE handler: delay, jitter, reordering and bursty loss without sch_netem
caller.py    the caller side of a run, started inside the lab's caller namespace
run.py       `netem/run`: scripted calls through the lab, one per profile, then the report
report.py    what a run measured, per profile: report.json, report.md and PNG plots

The executables netem/lab, netem/apply, netem/clear and netem/run wrap these with the
project's venv.
"""
