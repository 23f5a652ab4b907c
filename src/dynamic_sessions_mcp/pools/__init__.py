"""Pool backends: how the bridge reaches a session pool. Tools see only `base.Pool`."""
