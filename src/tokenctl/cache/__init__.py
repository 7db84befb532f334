"""The response cache: an exact repeat of a cacheable request is answered from a stored answer, billed nothing."""
