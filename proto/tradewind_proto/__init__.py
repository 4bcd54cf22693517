"""Protocol-buffer contracts between Tradewind processes and their generated stubs."""
