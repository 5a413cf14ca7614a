from fleetsync.controller.policy import Policy, Verdict


def test_success_retry_and_give_up():
    p = Policy(max_retries=2)
    assert p.verdict(0, 0) is Verdict.SUCCEED
    assert p.verdict(23, 0) is Verdict.RETRY
    assert p.verdict(24, 1) is Verdict.RETRY
    assert p.verdict(24, 2) is Verdict.FAIL
    for transport in (10, 11, 12, 30, 35, 255, 124, 250, None):
        assert p.verdict(transport, 0) is Verdict.RETRY


def test_usage_errors_fail_at_once():
    p = Policy(max_retries=5)
    for code in (1, 2, 3, 4, 5, 6, 13, 14, 21, 22, 25):
        assert p.verdict(code, 0) is Verdict.FAIL


def test_no_retries():
    assert Policy(max_retries=0).verdict(23, 0) is Verdict.FAIL
