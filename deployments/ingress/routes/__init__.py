"""One module per API area; each gives ``router(context)``, the area's routes bound to one
ingress replica's services."""
