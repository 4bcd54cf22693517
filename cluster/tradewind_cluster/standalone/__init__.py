"""`tradewind standalone`: a whole cluster on one machine, supervised by one process."""
