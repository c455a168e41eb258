"""`python -m resnet_deploy`: the same as the `resnet-deploy` command."""

from resnet_deploy.cli import main

main(prog_name="resnet-deploy")
