"""The daemon's web page: a twisted.web site with a JSON API, live events and static files."""
