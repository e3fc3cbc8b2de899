// node-marketo-rest's lead and list calls against the sandbox; prints one JSON object of results.
// Usage: node node_steps.js <base URL>   (node-marketo-rest found through NODE_PATH)
'use strict';
const Marketo = require('node-marketo-rest');

const base = process.argv[2];
const marketo = new Marketo({
  endpoint: base + '/rest',
  identity: base + '/identity',
  clientId: 'sandbox-client-id',
  clientSecret: 'sandbox-client-secret',
});

async function failure(promise) {
  try {
    await promise;
    return null;
  } catch (error) {
    return error.body || error;
  }
}

async function main() {
  const out = {};
  out.token = await marketo.getOAuthToken();
  out.upsert = await marketo.lead.createOrUpdate(
    [{email: 'node1@example.com', firstName: 'One'}, {email: 'node2@example.com'}],
    {lookupField: 'email', action: 'createOrUpdate'});
  const [first, second] = out.upsert.result.map((item) => item.id);
  out.find = await marketo.lead.find('email', ['node1@example.com', 'node2@example.com'],
    {fields: ['email', 'firstName']});
  out.byId = await marketo.lead.byId(first, {fields: ['email']});
  out.describe = await marketo.lead.describe();
  out.partitions = await marketo.lead.partitions();
  out.listsBefore = await marketo.list.find({name: ['Node list']});
  out.addToList = await marketo.list.addLeadsToList(out.listId = Number(process.argv[3]),
    [first, second]);
  out.isMember = await marketo.list.isMember(out.listId, [first]);
  out.listLeads = await marketo.list.getLeads(out.listId, {fields: 'email', batchSize: 1});
  out.listLeadsNext = await out.listLeads.nextPage();
  out.removeFromList = await marketo.list.removeLeadsFromList(out.listId, [second]);
  out.listById = await marketo.list.byId(out.listId);
  out.merge = await marketo.lead.mergeLead(first, [second], {mergeInCRM: false});
  out.pageToken = await marketo.lead.getPageToken('2000-01-01T00:00:00Z');
  out.usage = await marketo.stats.usage();
  out.unknownList = await failure(marketo.list.addLeadsToList(424242, [first]));
  process.stdout.write(JSON.stringify(out));
}

main().catch((error) => {
  process.stderr.write(String(error && error.stack || JSON.stringify(error)));
  process.exit(1);
});
