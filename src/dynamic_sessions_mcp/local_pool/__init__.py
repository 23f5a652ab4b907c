"""The embedded local session pool: the dynamic-sessions REST API served on loopback, each
session in a sandbox on this machine. Shares nothing with the bridge but the wire API."""
