"""The streaming daemon behind `vaeguard run`: Kafka in, scores and dead letters out."""
