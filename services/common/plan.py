"""What one task may do at most: shared by the workers that do it and the jobs service,
which refuses a report that claims more (services/jobs/dispatched.py)."""

from __future__ import annotations

# Places a discovery asks the search for: twice what the user keeps, within what Text
# Search returns (60 places at most, over pages of 20).
SEARCH_MIN, SEARCH_MAX = 20, 60
# Billed search calls (pages) one discovery delivery makes at most.
SEARCH_CALLS_MAX = 3
# One enrichment delivery makes at most one email search (the sandbox's "email_search",
# Hunter's "domain_search") and the verifications of its email waterfall
# (services/enrichment/waterfall.py): each address its website step found, up to
# WEBSITE_CANDIDATES_MAX; each role address of its pattern step, up to ROLE_ADDRESSES_MAX
# (a setting, ROLE_ADDRESSES, that may not name more); and the email search's address.
EMAIL_SEARCHES = ("email_search", "domain_search")
WEBSITE_CANDIDATES_MAX = 3
ROLE_ADDRESSES_MAX = 5
VERIFICATIONS_MAX = WEBSITE_CANDIDATES_MAX + ROLE_ADDRESSES_MAX + 1
