"""Training: Lightning module, CIFAR-10 DataModule, report and the train-and-push command."""
