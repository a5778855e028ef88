"""The heart shared by the API and the workers: key schema, wire codec, broker, batching policy."""
