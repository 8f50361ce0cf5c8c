"""The resnet-cifar Space: app.py (layout and wiring over resnet_cifar) and its build and deploy command."""
