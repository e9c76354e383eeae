"""HTTP routers: translate requests, delegate to the data plane and tasks, translate answers."""
