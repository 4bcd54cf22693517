"""Pure scheduling decisions: snapshot in, frozen decisions with reasons out."""
