"""The coverage arithmetic of `interest bench profiles` (the benchmark itself needs the model)."""

from interest.engine.projections.state import InterestState
from interest.tools.bench_profiles import active_users, coverage


def test_active_users_are_those_with_an_event_in_the_last_window_of_stream_time():
    ratings = [{"user": "a", "ts": 0.0}, {"user": "b", "ts": 5000.0}, {"user": "c", "ts": 9000.0},
               {"user": "a", "ts": 10000.0}]
    assert active_users(ratings, 3600.0) == {"a", "c"}
    assert active_users(ratings, 100.0) == {"a"}
    assert active_users([], 3600.0) == set()


def test_coverage_counts_summaries_younger_than_n_events():
    def state(user, profile, since):
        return InterestState(user=user, profile={"summary": "s"} if profile else None,
                             since_profile=since)
    states = {"fresh": state("fresh", True, 0), "older": state("older", True, 9),
              "old": state("old", True, 10), "none": state("none", False, 3)}
    assert coverage(states, {"fresh", "older", "old", "none"}, 10) == 0.5
    assert coverage(states, {"fresh", "older", "old", "none"}, 20) == 0.75
    assert coverage(states, set(), 10) is None
