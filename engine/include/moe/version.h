/* Library version. */
#ifndef MOE_VERSION_H
#define MOE_VERSION_H

/* "0.1.0" */
const char *moe_version(void);

#endif
