"""The networks: the ResNets, their construction from scratch or from weights, and the grader around them."""
