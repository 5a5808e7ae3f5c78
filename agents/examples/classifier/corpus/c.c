#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct node {
    char *key;
    int value;
    struct node *next;
};

static struct node *push(struct node *head, const char *key, int value)
{
    struct node *n = malloc(sizeof *n);
    if (n == NULL) {
        perror("malloc");
        exit(EXIT_FAILURE);
    }
    n->key = strdup(key);
    n->value = value;
    n->next = head;
    return n;
}

static int lookup(const struct node *head, const char *key, int *out)
{
    for (; head != NULL; head = head->next) {
        if (strcmp(head->key, key) == 0) {
            *out = head->value;
            return 1;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct node *list = NULL;
    int v;

    for (int i = 1; i < argc; i++)
        list = push(list, argv[i], i);
    if (lookup(list, "needle", &v))
        printf("needle at %d\n", v);
    else
        printf("no needle\n");
    return 0;
}
