"""Process limits the proxy sets for itself at start."""

import resource

from pgaurora.cli.runtime import FDS_PER_SESSION, raise_fd_limit


def test_fd_limit_is_raised_for_max_client_connections_within_the_hard_limit():
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, before[1]))
        soft = raise_fd_limit(2000)
        want = FDS_PER_SESSION * 2000 + 256
        hard = before[1]
        assert soft == (want if hard == resource.RLIM_INFINITY else min(want, hard))
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == soft
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)
