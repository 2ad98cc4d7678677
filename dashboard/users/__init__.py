"""Users, roles and sign-in throttling."""
