"""Load generator for the chat gateway: the original document's scenarios, measured from the client side."""
