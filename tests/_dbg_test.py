import time, threading, sys, traceback
from tests.test_http import *  # noqa
from tests.test_http import start, stalled_users  # noqa

def test_dbg(start, stalled_users):
    srv = start(make_config(projections={"max_lag_events": 5, "retry_after_ms": 1500}))
    limits = srv.service.limits
    for i in range(10):
        srv.service.ingest_events([parse_event(event(f"e{i}", user=f"u{i}"), limits)])
    wait_for(srv.service.busy, reason="the backlog past max_lag_events")
    print("busy", srv.service.busy(), srv.service.backlog(), srv.service.log.head, srv.service.runners["users"].position, file=sys.stderr)
    def dump():
        time.sleep(3)
        print("busy later", srv.service.busy(), srv.service.backlog(), file=sys.stderr)
        for th in threading.enumerate():
            if th.name.startswith("http"):
                traceback.print_stack(sys._current_frames()[th.ident], file=sys.stderr)
    threading.Thread(target=dump, daemon=True).start()
    error, head = error_of(srv, "POST", "/v1/events", 429, "overloaded", body=[event("late", item="m1")])
