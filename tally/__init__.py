"""What web, worker and clock share: config, database, logging, the local database, queries."""
