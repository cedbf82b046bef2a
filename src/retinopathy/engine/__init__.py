"""Running the networks: processes and samplers, the runtime's speed switches, batches, the loops."""
