"""attnzoo's built-in plugins, registered through the ``attnzoo`` entry-point group
exactly as third-party plugins are (see ``[project.entry-points.attnzoo]``)."""
