"""The web console: a page the box serves to talk to its agent by text and voice (`python -m appliance.console`)."""
