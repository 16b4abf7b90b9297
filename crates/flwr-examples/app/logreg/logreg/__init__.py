"""logreg: federated logistic regression served by Rust apps."""
