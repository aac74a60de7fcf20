"""One FastAPI router per page, over :mod:`productgen.web.shared`; :func:`productgen.web.app.create_app` wires them."""
