"""`python -m migrations`: the Procfile's release step."""

from migrations import main

raise SystemExit(main())
