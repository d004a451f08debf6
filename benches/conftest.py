# benches/ holds measurements, not tests: nothing here is collected even if pytest is pointed at it
# (tests/test_benches_smoke.py runs the smallest configuration instead).
collect_ignore_glob = ["*"]
