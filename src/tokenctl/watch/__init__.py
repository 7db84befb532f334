"""The watcher: alerts read from the ledger every few minutes (spend anomalies, a key's or team's prompt cache
going cold, cache-write spend above a threshold) and the keys' usual spend per hour that loop rules compare
velocity with."""
