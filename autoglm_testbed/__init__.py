"""Loopback stand-ins for the services our sandbox cannot reach (apt repos, hubs, mirrors)."""
