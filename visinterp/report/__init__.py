"""Report pages: the self-contained HTML shell, tables, embedded figures and the Pareto panel
every job's report draws (`page`)."""
