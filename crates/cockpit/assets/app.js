// Placeholder: the page is written on branch wt-page.
