"""HTTP pieces shared by the entry points that speak HTTP (the API and the reviewers' pages):
RFC 9457 problem details (:mod:`moderation.http.problems`). One floor below ``api/`` and
``web/``, which never import each other; the reviewers' pages are mounted into the API app at
the entry point (:mod:`moderation.app`)."""
