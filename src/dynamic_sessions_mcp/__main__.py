from dynamic_sessions_mcp.cli import main

main()
