"""One event of one conversation, split by concern behind a dispatch table (dispatch.py):

- frame.py: the turn itself (state read, commit, indexing, follow-ups) and its building blocks;
- customer.py: a customer's message (the brain, the waiting line);
- business.py: messages from the business's own phone, and echoes of our own replies;
- receipts.py: delivery statuses, edits, revokes, reactions;
- commands.py: the product's commands (an agent's reply, close, handback, assignment, line
  notices, timeouts);
- session.py: a WAHA session's status (not a conversation's turn).
"""
