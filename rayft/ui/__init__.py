"""`rayft ui`: a web app over a Ray cluster: configure a run from the schema, preview its data, launch it as a Ray
job, watch runs' curves and logs, stop and resume them, chat with a model, export it (app.py: the API; runs.py: the
jobs and run folders; forms.py: the Configure tab; views.py: data preview, chat engines, export; static/: the page;
locales/: one JSON file per language)."""
