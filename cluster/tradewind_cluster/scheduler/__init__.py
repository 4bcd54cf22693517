"""The scheduler replica: membership, the loop and its steps, and the services they use."""
