"""The conversation engine: state, history, waiting line, brains, outbox."""
