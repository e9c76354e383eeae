"""Image classifiers: logistic regression, MLP, CNN, ViT, GNN; their evaluation, card, OOD flag and int8 copies."""
