"""The report stage: ``report/index.html`` (Jinja2 templates in ``templates/``, styles in ``assets/``),
``report/summary.json`` and the terminal table."""
