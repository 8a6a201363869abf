"""Serving: the OpenAI-compatible PaCoRe server and the HTTP plumbing pacore's servers share."""
