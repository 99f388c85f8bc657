"""The report stage: ``report/index.html`` (Jinja2 templates in ``templates/``, styles in ``assets/``),
``report/summary.json`` and the terminal table. By job: ``load`` (reading the run), ``summary`` and ``seeds`` (the
results), ``fmt``, ``charts``, ``html`` and ``terminal`` (rendering them), ``stage`` (``write_report``)."""
